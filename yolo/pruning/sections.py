"""Moved: each block class declares its own ``prune_rule`` (``yolo.pruning.rules``); kept so that old
imports of ``rule_for`` / ``Rule`` from here still work."""
from .rules import Rule, rule_for

__all__ = ["Rule", "rule_for"]

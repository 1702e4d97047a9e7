"""Scaling and chaos experiments on the native stack, and the capacity planner."""

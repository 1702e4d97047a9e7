"""Online experiments: A/B, canary and shadow analysis against simulated users."""

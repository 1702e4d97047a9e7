"""simulator: the seeded world (catalogue, users, ground-truth clicks), its traffic and drifts.

``simulator.world.World`` is the world, ``simulator.generate.simulate`` writes its events to the
lake, ``simulator.policy`` holds the logging and oracle policies, ``simulator.scenarios`` the
drift scenarios and ``simulator.users`` the online users the Locust tests drive.
"""

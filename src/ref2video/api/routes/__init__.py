"""Route groups: tasks (the protocol), results (signed downloads), health."""

"""The application layer: what the service does, above the tables and below HTTP, the command
line and the workers. `transitions` alone changes a task's state; the other modules open the
transactions and call it (or the store's statements) inside them."""

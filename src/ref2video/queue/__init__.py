"""The queue's moving parts: claiming (manager), waking (wakeup), running (worker)."""

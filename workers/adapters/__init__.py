"""Framework adapters: turning a framework's model into a batched stage."""

"""Golden run histories of the examples, replayed against today's code."""

"""A registry of named parts (tasks, methods): each class registers one instance of itself under its
`name` with a class decorator in its own module; the stages look it up by the name the recipe validated."""


class Registry(dict):
    def register(self, cls: type) -> type:
        """Add one instance of `cls` under `cls.name` (a class decorator)."""
        self[cls.name] = cls()
        return cls

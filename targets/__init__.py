"""Built-in target specs (*.toml), installed as the package `compiler.targets`."""

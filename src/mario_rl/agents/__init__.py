"""One file per algorithm; each exposes a Config dataclass and train(cfg)."""

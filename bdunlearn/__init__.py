"""bdunlearn: backdoor attacks through machine unlearning, their detectors and defenses."""

__version__ = "0.1.0"

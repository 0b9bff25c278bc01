"""r1lite: the DeepSeek-R1 recipe (GRPO on rule-checked rewards) as small, practical software."""

__version__ = "0.1.0"

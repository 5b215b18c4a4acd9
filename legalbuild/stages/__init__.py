"""The stages of a build, one module each. Stage modules import torch & co. inside `run` only."""

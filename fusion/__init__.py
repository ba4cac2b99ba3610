"""Adapters into the shared space, modal attention, progressive early/late fusion and task heads."""

"""Merging an adapter into its base (`merge`) and the checks the merged folder must pass (`checks`)."""

"""The domain: vocabulary, message contracts, typed config and the regime math.

Imports nothing of the infrastructure (a test enforces it).
"""

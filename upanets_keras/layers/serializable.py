"""The package every custom layer, schedule and optimizer is registered under.

Saved `.keras` files name their objects `upanets_keras>ClassName`: changing it
would stop them from loading.
"""

PACKAGE = "upanets_keras"

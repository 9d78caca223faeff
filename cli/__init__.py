"""The upanets-keras command line (installed as `upanets_keras_cli`)."""

"""Object stores (local directory, S3, a failing one for tests) and chunk compression; the server uses them too."""

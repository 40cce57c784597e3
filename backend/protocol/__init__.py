"""What the device and the server say to each other: the wire models, valid names, the HTTP client."""

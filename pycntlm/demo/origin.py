"""A small origin web server on loopback with the shapes of response a proxy must relay."""

"""The HTTP edge: Host + path -> alias -> manifest entry -> blob bytes."""

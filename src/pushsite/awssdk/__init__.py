"""botocore plumbing (clients, error translation, model cache) for the AWS backends."""

"""pushsite on AWS: the Lambda handler, the Lambda package and the CloudFormation template.

Nothing outside this package imports it; it may import any layer below (service, stores).
"""

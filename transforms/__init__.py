"""Pure transforms: CloudWatch Logs payloads and VPC flow logs in, HEC-ready bytes out."""

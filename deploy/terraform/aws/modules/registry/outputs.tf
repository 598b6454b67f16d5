output "repository_url" {
  description = "URL to tag and push images to (ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME)."
  value       = aws_ecr_repository.this.repository_url
}

output "repository_arn" {
  description = "ARN of the repository."
  value       = aws_ecr_repository.this.arn
}

output "kms_key_arn" {
  description = "CMK that encrypts the repository's images."
  value       = module.kms.key_arn
}

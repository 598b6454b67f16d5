output "master_key_secret_arn" {
  description = "ARN of the master key secret."
  value       = aws_secretsmanager_secret.this["master-key"].arn
}

output "secret_encryption_key_secret_arn" {
  description = "ARN of the tenant secret-encryption key secret."
  value       = aws_secretsmanager_secret.this["secret-encryption"].arn
}

output "secret_names" {
  description = "Names of the secrets (for aws secretsmanager put-secret-value)."
  value       = { for k, s in aws_secretsmanager_secret.this : k => s.name }
}

output "kms_key_arn" {
  description = "CMK that encrypts the secrets."
  value       = module.kms.key_arn
}

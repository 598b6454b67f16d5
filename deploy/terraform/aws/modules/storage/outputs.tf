output "output_bucket_name" {
  description = "Bucket of run output and dead-letter records."
  value       = module.output.id
}

output "output_bucket_arn" {
  description = "ARN of the output bucket."
  value       = module.output.arn
}

output "artifacts_bucket_name" {
  description = "Bucket of deploy artefacts and pipeline templates."
  value       = module.artifacts.id
}

output "artifacts_bucket_arn" {
  description = "ARN of the artefacts bucket."
  value       = module.artifacts.arn
}

output "logs_bucket_name" {
  description = "Bucket of S3 and load-balancer access logs (ready: its policy lets the load balancer write)."
  value       = aws_s3_bucket.logs.id
  # The load balancer checks at creation that it may write its access logs here.
  depends_on = [aws_s3_bucket_policy.logs]
}

output "alb_log_prefix" {
  description = "Key prefix of the load balancer's access logs."
  value       = var.alb_log_prefix
}

output "kms_key_arn" {
  description = "CMK that encrypts the output and artefacts buckets."
  value       = module.kms.key_arn
}

output "output_prefix" {
  description = "Key prefix of run output."
  value       = var.output_prefix
}

output "dlq_prefix" {
  description = "Key prefix of dead-letter records."
  value       = var.dlq_prefix
}

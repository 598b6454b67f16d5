# Secrets Manager secrets of the control plane, encrypted with this module's CMK. Terraform creates
# the secrets but never their values, so no key material lands in the Terraform state: put the
# values with `aws secretsmanager put-secret-value` (docs/deploy.md) before the services start.
#
#   master-key          -> env BEAM_ETL_API_MASTER_KEY (the control plane's master/bootstrap key)
#   secret-encryption   -> env BEAM_ETL_API_SECRET_KEY (the Fernet key that encrypts tenant
#                          secrets at rest, beam_etl/api/vault.py)
#
# Rotation: pass rotation_lambda_arns (a rotation function per secret) to turn it on. The
# secret-encryption key cannot rotate blindly: every stored tenant secret must be re-encrypted
# with the new key, so its rotation function has to do that re-encryption.

locals {
  secrets = {
    master-key = {
      description = "beam_etl control plane master key (BEAM_ETL_API_MASTER_KEY)"
    }
    secret-encryption = {
      description = "beam_etl Fernet key that encrypts tenant secrets at rest (BEAM_ETL_API_SECRET_KEY)"
    }
  }
}

module "kms" {
  source = "../kms"

  name        = "${var.name}-secrets"
  description = "${var.name}: Secrets Manager secrets of the control plane"
  tags        = var.tags
}

resource "aws_secretsmanager_secret" "this" {
  #checkov:skip=CKV2_AWS_57:rotation is switched on per secret through var.rotation_lambda_arns (aws_secretsmanager_secret_rotation below); the Fernet key needs a function that re-encrypts stored tenant secrets, which only the operator can supply
  for_each = local.secrets

  name                    = "${var.name}/${each.key}"
  description             = each.value.description
  kms_key_id              = module.kms.key_arn
  recovery_window_in_days = var.recovery_window_in_days
  tags                    = var.tags
}

resource "aws_secretsmanager_secret_rotation" "this" {
  for_each = var.rotation_lambda_arns

  secret_id           = aws_secretsmanager_secret.this[each.key].id
  rotation_lambda_arn = each.value

  rotation_rules {
    automatically_after_days = var.rotation_days
  }
}

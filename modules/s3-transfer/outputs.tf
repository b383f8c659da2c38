output "id" {
  description = "The transfer's id (its name)."
  value       = dth_s3_transfer.this.id
}

output "status" {
  description = "`idle` (nothing run yet), `syncing`, `in_sync` or `failed`, as of the latest refresh."
  value       = dth_s3_transfer.this.status
}

output "queue_url" {
  description = "URL of the SQS job queue."
  value       = dth_s3_transfer.this.queue_url
}

output "dead_letter_queue_url" {
  description = "URL of the SQS dead-letter queue (jobs that failed `max_attempts` times)."
  value       = dth_s3_transfer.this.dead_letter_queue_url
}

output "ledger_table" {
  description = "Name of the DynamoDB ledger table."
  value       = dth_s3_transfer.this.ledger_table
}

output "worker_asg_name" {
  description = "Name of the workers' Auto Scaling group."
  value       = dth_s3_transfer.this.worker_asg_name
}

output "objects_done" {
  description = "Objects of the latest finder run copied and verified, as of the latest refresh."
  value       = dth_s3_transfer.this.objects_done
}

output "objects_found" {
  description = "Objects the latest finder run found to move, as of the latest refresh."
  value       = dth_s3_transfer.this.objects_found
}

output "dead_letters" {
  description = "Jobs on the dead-letter queue, as of the latest refresh."
  value       = dth_s3_transfer.this.dead_letters
}

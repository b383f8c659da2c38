# A transfer is imported by its name: every AWS resource of the transfer is found from it.
terraform import dth_ecr_transfer.example mirror

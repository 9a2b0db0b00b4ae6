module shakeout.dev/images/workload

go 1.22

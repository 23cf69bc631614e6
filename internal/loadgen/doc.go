// Package loadgen is Baton's load generator: it replays FaaS traces in the
// Azure Functions 2019 format (and the 2021 per-invocation format), sends
// fixed-rate and closed-loop load, records every invocation and writes the
// results (a CSV, a summary, PNG plots).
//
// The core is pure and tested without a network: trace parsing (trace.go),
// arrival generation and the schedules built from it (arrival.go,
// schedule.go), recording and statistics (record.go, stats.go) and the
// reports (report.go, plot.go). The runner (runner.go) drives a schedule
// through an Invoker with an injectable Clock; http.go is the Invoker that
// speaks to a data plane, and deploy.go registers functions through the
// control plane's gRPC API.
package loadgen

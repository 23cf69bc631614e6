// Package e2e holds Baton's end-to-end tests: a whole cluster (control
// plane, data plane, workers) talking through its real APIs, with real
// process sandboxes, and the baton binary itself started as a process.
package e2e

// Package chaos holds Baton's failure tests: every component runs as its own
// process (the real baton binary), under steady load, and the tests kill,
// stop and restart them, printing what they measured.
package chaos

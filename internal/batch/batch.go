// Package batch cuts the messages a session's sender found queued into runs
// that each go out as one message (WorkerMessages, WorkerCommands,
// ScaleRequests): bursts of sandbox creations cost one gRPC message per run
// instead of one per sandbox.
package batch

import (
	"iter"

	"google.golang.org/protobuf/proto"
)

// Bounds of one run: messages, and encoded bytes (well under gRPC's default
// 4 MiB receive limit). A message larger than MaxBytes goes alone.
const (
	MaxCount = 256
	MaxBytes = 1 << 20
)

// Split yields q in order, cut into runs within the bounds.
func Split[T proto.Message](q []T) iter.Seq[[]T] {
	return func(yield func([]T) bool) {
		if len(q) == 1 { // the common case: no need to size it
			yield(q)
			return
		}
		start, size := 0, 0
		for i, m := range q {
			n := proto.Size(m)
			if i > start && (i-start == MaxCount || size+n > MaxBytes) {
				if !yield(q[start:i]) {
					return
				}
				start, size = i, 0
			}
			size += n
		}
		if start < len(q) {
			yield(q[start:])
		}
	}
}

// Send sends q in order, one message per run (see Split): a run of one as
// one(m), a longer run as many(run).
func Send[T proto.Message, M any](q []T, one func(T) M, many func([]T) M, send func(M) error) error {
	for run := range Split(q) {
		var m M
		if len(run) == 1 {
			m = one(run[0])
		} else {
			m = many(run)
		}
		if err := send(m); err != nil {
			return err
		}
	}
	return nil
}

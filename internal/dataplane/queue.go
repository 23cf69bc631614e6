package dataplane

import "sync"

// A function's wait queue: requests that found no free slot wait here in
// FIFO order. It is an intrusive doubly linked list, so a waiter that gives up
// (timeout, client gone) leaves in O(1), and waiters are pooled, so queueing
// does not allocate. The queue is guarded by its function's mu; a slot is
// handed to the head waiter by sending it on the waiter's channel while mu is
// held, so after taking mu a waiter knows for sure whether it was served.

type waitResult struct {
	ep  *endpoint // a slot taken on the waiter's behalf, or nil
	err *reqError // why the wait ended without a slot
}

type waiter struct {
	prev, next *waiter
	queued     bool
	ch         chan waitResult // capacity 1: the hand-off never blocks
}

var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan waitResult, 1)} }}

func getWaiter() *waiter { return waiterPool.Get().(*waiter) }

// putWaiter recycles w; its channel must be empty and it must be out of the
// queue.
func putWaiter(w *waiter) { waiterPool.Put(w) }

type waitQueue struct {
	head, tail *waiter
	n          int
}

func (q *waitQueue) push(w *waiter) {
	w.queued = true
	w.next = nil
	w.prev = q.tail
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.n++
}

func (q *waitQueue) pop() *waiter {
	w := q.head
	if w != nil {
		q.remove(w)
	}
	return w
}

func (q *waitQueue) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.prev, w.next, w.queued = nil, nil, false
	q.n--
}

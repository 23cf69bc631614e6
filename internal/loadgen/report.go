package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Output is the set of files of one run: PREFIX.csv, PREFIX-summary.txt and
// PREFIX-*.png. The CSV is created exclusively, so two runs never share a
// prefix.
type Output struct {
	Prefix string
	CSV    *os.File
}

var unsafeLabel = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// CreateOutput claims a prefix in dir for a run labelled label started at
// now: dir/baton-load-YYYYMMDD-HHMMSS-LABEL, with -2, -3, ... appended if
// a run already used it. dir is created if needed.
func CreateOutput(dir, label string, now time.Time) (*Output, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create output directory: %w", err)
	}
	base := filepath.Join(dir, "baton-load-"+now.Format("20060102-150405")+"-"+
		strings.Trim(unsafeLabel.ReplaceAllString(label, "_"), "_"))
	for i := 1; i < 1000; i++ {
		p := base
		if i > 1 {
			p = fmt.Sprintf("%s-%d", base, i)
		}
		f, err := os.OpenFile(p+".csv", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("create output: %w", err)
		}
		return &Output{Prefix: p, CSV: f}, nil
	}
	return nil, fmt.Errorf("create output: %s-* all taken", base)
}

// CSVHeader is the first line of the per-invocation CSV.
var CSVHeader = []string{"function", "start", "offset_ms", "scheduled_ms", "e2e_ms", "exec_ms", "scheduling_ms",
	"temperature", "status", "error", "requested_cpu_ms", "requested_memory_mib"}

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 3, 64) }

// WriteCSV writes one row per measured invocation (the warm-up is left
// out), in order of start: the function, the wall-clock start (RFC 3339),
// the start and planned start since the run began, end-to-end latency,
// the execution time the function reported and the scheduling latency
// (both empty when the function reported none), cold or warm, the HTTP
// status (0: no answer), the error kind, and what was asked of the
// function.
func WriteCSV(w io.Writer, r *Result) error {
	recs := make([]*Record, 0, len(r.Records))
	for i := range r.Records {
		if !r.Records[i].Warmup {
			recs = append(recs, &r.Records[i])
		}
	}
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Start < recs[j].Start })
	bw := bufio.NewWriterSize(w, 1<<16)
	bw.WriteString(strings.Join(CSVHeader, ",") + "\n")
	var line []byte
	for _, rec := range recs {
		exec, sched := "", ""
		if rec.ExecKnown {
			exec, sched = ms(rec.Exec), ms(rec.Scheduling())
		}
		line = line[:0]
		line = appendCSVField(line, rec.Function)
		line = append(line, ',')
		line = r.Started.Add(rec.Start).UTC().AppendFormat(line, time.RFC3339Nano)
		for _, f := range []string{ms(rec.Start), ms(rec.Scheduled), ms(rec.Latency), exec, sched, rec.Temp.String(),
			strconv.Itoa(rec.Status)} {
			line = append(line, ',')
			line = append(line, f...)
		}
		line = append(line, ',')
		line = appendCSVField(line, rec.Err)
		line = append(line, ',')
		line = strconv.AppendInt(line, rec.Requested.Milliseconds(), 10)
		line = append(line, ',')
		line = strconv.AppendInt(line, int64(rec.MemoryMiB), 10)
		line = append(line, '\n')
		if _, err := bw.Write(line); err != nil {
			return fmt.Errorf("write csv: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write csv: %w", err)
	}
	return nil
}

func appendCSVField(b []byte, s string) []byte {
	if !strings.ContainsAny(s, ",\"\n\r") {
		return append(b, s...)
	}
	return append(append(b, '"'), append([]byte(strings.ReplaceAll(s, `"`, `""`)), '"')...)
}

// FormatDuration prints a latency with a unit suited to its size.
func FormatDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.3fs", d.Seconds())
	}
}

func (q Quantiles) String() string {
	if q.N == 0 {
		return "(no sample)"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s", FormatDuration(q.P50), FormatDuration(q.P90),
		FormatDuration(q.P99), FormatDuration(q.P999), FormatDuration(q.Max))
}

// WriteText writes the human summary of a run; files are listed at the end.
func (s *Summary) WriteText(w io.Writer, files []string) error {
	bw := bufio.NewWriter(w)
	p := func(format string, a ...any) { fmt.Fprintf(bw, format, a...) }
	p("baton load: %s\n", s.Title)
	warm := ""
	if s.Warmup > 0 {
		warm = fmt.Sprintf(" (+%d in the warm-up, not counted)", s.Warmup)
	}
	if s.OpenLoop {
		p("  requests     %d planned, %d sent, %d answered%s\n", s.Planned, s.Issued, s.Measured, warm)
	} else {
		p("  requests     %d answered%s\n", s.Measured, warm)
	}
	p("  throughput   %.1f req/s answered OK over %s\n", s.Throughput, FormatDuration(s.Window))
	p("  end to end   %s\n", s.E2E)
	if s.Sched.N > 0 {
		p("  scheduling   %s  (end to end - reported execution time)\n", s.Sched)
	} else {
		p("  scheduling   (the function reported no execution time)\n")
	}
	if s.Measured > 0 {
		p("  cold starts  %d (%.1f%%)\n", s.Cold, 100*s.ColdShare)
	}
	if len(s.Errors) == 0 {
		p("  errors       none\n")
	} else {
		kinds := make([]string, 0, len(s.Errors))
		n := 0
		for k, c := range s.Errors {
			kinds = append(kinds, k)
			n += c
		}
		sort.Slice(kinds, func(i, j int) bool {
			if s.Errors[kinds[i]] != s.Errors[kinds[j]] {
				return s.Errors[kinds[i]] > s.Errors[kinds[j]]
			}
			return kinds[i] < kinds[j]
		})
		parts := make([]string, len(kinds))
		for i, k := range kinds {
			parts[i] = fmt.Sprintf("%s ×%d", k, s.Errors[k])
		}
		p("  errors       %d (%.2f%%): %s\n", n, 100*float64(n)/float64(max(s.Measured, 1)), strings.Join(parts, ", "))
	}
	if len(s.Slowdown) > 0 {
		p("  slowdown     per-function geometric mean of end to end / execution time, across %d functions: p50 %.2f  p99 %.2f\n",
			len(s.Slowdown), s.SlowdownP50, s.SlowdownP99)
	} else {
		p("  slowdown     n/a: no invocation asked for %s or more of work (--exec) and reported its execution time\n",
			FormatDuration(MinSlowdownExec))
	}
	if s.OpenLoop {
		if !s.Behind {
			p("  schedule     kept up: lateness p99 %s, max %s\n", FormatDuration(s.Lateness), FormatDuration(s.MaxLateness))
		} else {
			p("  schedule     FELL BEHIND: %d of %d planned sent, lateness p99 %s, max %s (over %s)\n", s.Issued, s.Planned,
				FormatDuration(s.Lateness), FormatDuration(s.MaxLateness), FormatDuration(BehindThreshold))
			p("               %s\n", s.worstSeconds(8))
		}
	}
	for i, f := range files {
		if i == 0 {
			p("  files        %s\n", f)
		} else {
			p("               %s\n", f)
		}
	}
	return bw.Flush()
}

// worstSeconds lists the seconds (at most n, in time order) where the
// fewest of the planned requests went out.
func (s *Summary) worstSeconds(n int) string {
	type sec struct{ i, issued, planned int }
	var all []sec
	for i, x := range s.Seconds {
		if x.Planned > 0 && x.Issued < x.Planned {
			all = append(all, sec{i, x.Issued, x.Planned})
		}
	}
	if len(all) == 0 {
		return "every second still sent its planned count"
	}
	sort.SliceStable(all, func(a, b int) bool {
		return float64(all[a].issued)/float64(all[a].planned) < float64(all[b].issued)/float64(all[b].planned)
	})
	all = all[:min(n, len(all))]
	slices.SortFunc(all, func(a, b sec) int { return a.i - b.i })
	parts := make([]string, len(all))
	for k, x := range all {
		parts[k] = fmt.Sprintf("s%d %d/%d", x.i, x.issued, x.planned)
	}
	return "sent/planned in the worst seconds: " + strings.Join(parts, ", ")
}

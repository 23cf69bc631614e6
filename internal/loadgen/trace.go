package loadgen

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Trace is a FaaS trace ready to replay: its functions and either their
// invocation counts per minute (the Azure Functions 2019 format) or an
// explicit list of invocations (the 2021 per-invocation format).
type Trace struct {
	// Format is "azure2019" or "azure2021".
	Format string
	// MinuteColumns are the names of the minute columns of invocations.csv,
	// in file order (2019 format; they are read by position, not by name).
	MinuteColumns []string
	// Functions are the trace's functions in file order.
	Functions []*Function
	// Calls are the invocations of a 2021 trace, sorted by Start.
	Calls []Call
	// Skipped counts invocation rows dropped because durations.csv or
	// memory.csv had no row for their HashFunction.
	Skipped int
}

// Function is one function of a trace.
type Function struct {
	Index        int    // position in the trace (0-based), part of Name
	Name         string // a DNS label naming it in Baton: trace-<index>-<first 8 of hash>
	HashOwner    string
	HashApp      string
	HashFunction string
	Trigger      string
	PerMinute    []int         // invocations in each minute (2019 format)
	Duration     DurationStats // milliseconds
	Memory       MemoryStats   // MiB
}

// DurationStats is a function's row of durations.csv, in milliseconds.
type DurationStats struct {
	Average, Count, Minimum, Maximum float64
	P0, P1, P25, P50, P75, P99, P100 float64
}

// MemoryStats is a function's row of memory.csv, in MiB.
type MemoryStats struct {
	SampleCount, Average                  float64
	P1, P5, P25, P50, P75, P95, P99, P100 float64
}

// Call is one invocation of a 2021 trace.
type Call struct {
	Function int           // index into Trace.Functions
	Start    time.Duration // since the trace's first invocation
	Duration time.Duration // as recorded
}

// Minutes returns how many minutes the trace covers.
func (t *Trace) Minutes() int {
	if t.Format == FormatAzure2021 {
		if len(t.Calls) == 0 {
			return 0
		}
		return int(t.Calls[len(t.Calls)-1].Start/time.Minute) + 1
	}
	return len(t.MinuteColumns)
}

// Invocations returns the number of invocations in the trace.
func (t *Trace) Invocations() int {
	if t.Format == FormatAzure2021 {
		return len(t.Calls)
	}
	n := 0
	for _, f := range t.Functions {
		for _, c := range f.PerMinute {
			n += c
		}
	}
	return n
}

// Trace formats.
const (
	FormatAzure2019 = "azure2019"
	FormatAzure2021 = "azure2021"
)

// ReadTrace reads a trace: a directory holds the 2019 format
// (invocations.csv, durations.csv and memory.csv), a file the 2021
// per-invocation format.
func ReadTrace(path string) (*Trace, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read trace: %w", err)
	}
	if !st.IsDir() {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read trace: %w", err)
		}
		defer f.Close()
		t, err := ParseAzure2021(f)
		if err != nil {
			return nil, fmt.Errorf("read trace %s: %w", path, err)
		}
		return t, nil
	}
	var files [3]*os.File
	for i, name := range []string{"invocations.csv", "durations.csv", "memory.csv"} {
		f, err := os.Open(filepath.Join(path, name))
		if err != nil {
			return nil, fmt.Errorf("read trace %s (a 2019-format trace folder holds invocations.csv, durations.csv and memory.csv): %w", path, err)
		}
		defer f.Close()
		files[i] = f
	}
	t, err := ParseAzure2019(files[0], files[1], files[2])
	if err != nil {
		return nil, fmt.Errorf("read trace %s: %w", path, err)
	}
	return t, nil
}

// table is a CSV file read whole: its header and rows.
type table struct {
	name   string
	header []string
	rows   [][]string
}

func readTable(name string, r io.Reader) (*table, error) {
	cr := csv.NewReader(r)
	cr.TrimLeadingSpace = true
	recs, err := cr.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("%s: empty (want a header row)", name)
	}
	for i := range recs[0] {
		recs[0][i] = strings.TrimSpace(strings.TrimPrefix(recs[0][i], "\ufeff"))
	}
	return &table{name: name, header: recs[0], rows: recs[1:]}, nil
}

// cols returns the index of each named column, or an error naming the
// missing ones.
func (t *table) cols(names ...string) ([]int, error) {
	idx := make([]int, len(names))
	var missing []string
	for i, n := range names {
		idx[i] = -1
		for j, h := range t.header {
			if h == n {
				idx[i] = j
				break
			}
		}
		if idx[i] < 0 {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s: no column %s", t.name, strings.Join(missing, ", "))
	}
	return idx, nil
}

// floats parses the named columns of row r as numbers.
func (t *table) floats(r int, idx []int, dst ...*float64) error {
	for i, j := range idx {
		v, err := strconv.ParseFloat(strings.TrimSpace(t.rows[r][j]), 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%s row %d column %s: %q is not a number", t.name, r+2, t.header[j], t.rows[r][j])
		}
		*dst[i] = v
	}
	return nil
}

// byHash maps HashFunction to the first row holding it.
func (t *table) byHash() (map[string]int, error) {
	idx, err := t.cols("HashFunction")
	if err != nil {
		return nil, err
	}
	m := make(map[string]int, len(t.rows))
	for r, row := range t.rows {
		h := row[idx[0]]
		if _, dup := m[h]; !dup {
			m[h] = r
		}
	}
	return m, nil
}

var invocationFixed = []string{"HashOwner", "HashApp", "HashFunction", "Trigger"}

// ParseAzure2019 parses a trace in the Azure Functions 2019 format and
// joins its three files on HashFunction. The fixed columns are found by
// name; every other column of invocations.csv is a minute, read by
// position. Rows whose function has no durations or memory row are dropped
// and counted in Skipped.
func ParseAzure2019(invocations, durations, memory io.Reader) (*Trace, error) {
	inv, err := readTable("invocations.csv", invocations)
	if err != nil {
		return nil, err
	}
	dur, err := readTable("durations.csv", durations)
	if err != nil {
		return nil, err
	}
	mem, err := readTable("memory.csv", memory)
	if err != nil {
		return nil, err
	}
	fixed, err := inv.cols(invocationFixed...)
	if err != nil {
		return nil, err
	}
	isFixed := map[int]bool{}
	for _, j := range fixed {
		isFixed[j] = true
	}
	t := &Trace{Format: FormatAzure2019}
	var minuteIdx []int
	for j, h := range inv.header {
		if !isFixed[j] {
			minuteIdx = append(minuteIdx, j)
			t.MinuteColumns = append(t.MinuteColumns, h)
		}
	}
	if len(minuteIdx) == 0 {
		return nil, errors.New("invocations.csv: no minute columns")
	}
	durCols, err := dur.cols("Average", "Count", "Minimum", "Maximum", "percentile_Average_0", "percentile_Average_1",
		"percentile_Average_25", "percentile_Average_50", "percentile_Average_75", "percentile_Average_99",
		"percentile_Average_100")
	if err != nil {
		return nil, err
	}
	memCols, err := mem.cols("SampleCount", "AverageAllocatedMb", "AverageAllocatedMb_pct1", "AverageAllocatedMb_pct5",
		"AverageAllocatedMb_pct25", "AverageAllocatedMb_pct50", "AverageAllocatedMb_pct75", "AverageAllocatedMb_pct95",
		"AverageAllocatedMb_pct99", "AverageAllocatedMb_pct100")
	if err != nil {
		return nil, err
	}
	durRow, err := dur.byHash()
	if err != nil {
		return nil, err
	}
	memRow, err := mem.byHash()
	if err != nil {
		return nil, err
	}
	for r, row := range inv.rows {
		hash := row[fixed[2]]
		dr, okD := durRow[hash]
		mr, okM := memRow[hash]
		if !okD || !okM {
			t.Skipped++
			continue
		}
		f := &Function{Index: len(t.Functions), HashOwner: row[fixed[0]], HashApp: row[fixed[1]], HashFunction: hash,
			Trigger: row[fixed[3]], PerMinute: make([]int, len(minuteIdx))}
		f.Name = FunctionName(f.Index, hash)
		for m, j := range minuteIdx {
			n, err := parseCount(row[j])
			if err != nil {
				return nil, fmt.Errorf("invocations.csv row %d column %s: %w", r+2, inv.header[j], err)
			}
			f.PerMinute[m] = n
		}
		d := &f.Duration
		if err := dur.floats(dr, durCols, &d.Average, &d.Count, &d.Minimum, &d.Maximum, &d.P0, &d.P1, &d.P25, &d.P50,
			&d.P75, &d.P99, &d.P100); err != nil {
			return nil, err
		}
		mm := &f.Memory
		if err := mem.floats(mr, memCols, &mm.SampleCount, &mm.Average, &mm.P1, &mm.P5, &mm.P25, &mm.P50, &mm.P75,
			&mm.P95, &mm.P99, &mm.P100); err != nil {
			return nil, err
		}
		t.Functions = append(t.Functions, f)
	}
	return t, nil
}

// parseCount parses an invocation count: a non-negative integer, possibly
// written as a float ("3.0").
func parseCount(s string) (int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return n, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || v != math.Trunc(v) || v > math.MaxInt32 {
		return 0, fmt.Errorf("%q is not an invocation count", s)
	}
	return int(v), nil
}

// ParseAzure2021 parses a trace in the Azure Functions 2021 per-invocation
// format (app,func,end_timestamp,duration, in seconds). An invocation
// starts at end_timestamp - duration; starts are shifted so that the first
// one is at 0. Functions are numbered in order of first appearance.
func ParseAzure2021(r io.Reader) (*Trace, error) {
	tb, err := readTable("azure2021 trace", r)
	if err != nil {
		return nil, err
	}
	idx, err := tb.cols("app", "func", "end_timestamp", "duration")
	if err != nil {
		return nil, err
	}
	t := &Trace{Format: FormatAzure2021}
	byKey := map[[2]string]int{}
	starts := make([]float64, 0, len(tb.rows))
	for r, row := range tb.rows {
		var end, dur float64
		if err := tb.floats(r, idx[2:], &end, &dur); err != nil {
			return nil, err
		}
		if dur < 0 {
			return nil, fmt.Errorf("%s row %d: negative duration %g", tb.name, r+2, dur)
		}
		key := [2]string{row[idx[0]], row[idx[1]]}
		fi, ok := byKey[key]
		if !ok {
			fi = len(t.Functions)
			byKey[key] = fi
			t.Functions = append(t.Functions, &Function{Index: fi, Name: FunctionName(fi, key[1]), HashApp: key[0],
				HashFunction: key[1], Trigger: "unknown"})
		}
		starts = append(starts, end-dur)
		t.Calls = append(t.Calls, Call{Function: fi, Duration: time.Duration(dur * float64(time.Second))})
	}
	if len(t.Calls) == 0 {
		return t, nil
	}
	first := starts[0]
	for _, s := range starts {
		first = math.Min(first, s)
	}
	for i := range t.Calls {
		t.Calls[i].Start = time.Duration((starts[i] - first) * float64(time.Second))
	}
	sort.SliceStable(t.Calls, func(i, j int) bool { return t.Calls[i].Start < t.Calls[j].Start })
	return t, nil
}

var notLabel = regexp.MustCompile(`[^a-z0-9]+`)

// FunctionName names the function at index with hash in Baton: a DNS label
// "trace-<index>-<first 8 characters of the hash>".
func FunctionName(index int, hash string) string {
	h := notLabel.ReplaceAllString(strings.ToLower(hash), "")
	if len(h) > 8 {
		h = h[:8]
	}
	if h == "" {
		return fmt.Sprintf("trace-%d", index)
	}
	return fmt.Sprintf("trace-%d-%s", index, h)
}

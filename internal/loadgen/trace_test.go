package loadgen

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// sharedTraces is where the sample traces are: the CI checkout has shared/
// beside the repository.
const sharedTraces = "../../../shared/traces"

// traceDir returns the path of a sample trace, skipping the test when the
// samples are not there (a failure under CI=true, where they must be).
func traceDir(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(sharedTraces, name)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("sample trace %s missing (%v), and CI=true forbids skipping", p, err)
		}
		t.Skipf("skipped: sample trace %s not found (%v); check out shared/ beside the repository", p, err)
	}
	return p
}

func TestParseSampleTraces(t *testing.T) {
	t.Parallel()
	tests := []struct {
		dir             string
		functions       int
		minutes         int
		firstColumn     string
		total, first30  int
		firstHash       string // first function's HashFunction prefix
		firstAvg, p99   float64
		firstMem100     float64
		lastHash        string
		lastP50, lastMe float64
	}{
		{"example_4", 4, 1440, "1", 4525, 525, "c13acdc7567b", 100, 101, 152, "ae8a1640fa93", 125, 113},
		{"azure_100", 100, 480, "480", 339657, 19058, "b9386d10c889", 585, 10639, 41.66666666666666, "6e155b9f0148", 919, 195},
		{"azure_500", 500, 480, "480", 3037902, 171558, "0951ccc96bb7", 2638, 2638, 68.4, "d2c607b2e6b1", 3, 49.75},
	}
	for _, tc := range tests {
		t.Run(tc.dir, func(t *testing.T) {
			t.Parallel()
			tr, err := ReadTrace(traceDir(t, tc.dir))
			if err != nil {
				t.Fatal(err)
			}
			if tr.Format != FormatAzure2019 || len(tr.Functions) != tc.functions || tr.Skipped != 0 {
				t.Fatalf("format %s, %d functions, %d skipped; want azure2019, %d, 0", tr.Format, len(tr.Functions), tr.Skipped, tc.functions)
			}
			if tr.Minutes() != tc.minutes || tr.MinuteColumns[0] != tc.firstColumn {
				t.Errorf("%d minute columns from %q, want %d from %q", tr.Minutes(), tr.MinuteColumns[0], tc.minutes, tc.firstColumn)
			}
			if got := tr.Invocations(); got != tc.total {
				t.Errorf("%d invocations, want %d", got, tc.total)
			}
			s, err := NewTraceSchedule(tr, TraceOptions{Minutes: 30})
			if err != nil {
				t.Fatal(err)
			}
			if s.Planned() != tc.first30 {
				t.Errorf("first 30 minutes plan %d invocations, want %d", s.Planned(), tc.first30)
			}
			// The joins: durations and memory rows found by HashFunction
			// (memory.csv's columns come in another order in the azure
			// samples).
			first, last := tr.Functions[0], tr.Functions[len(tr.Functions)-1]
			if !strings.HasPrefix(first.HashFunction, tc.firstHash) || first.Duration.Average != tc.firstAvg ||
				first.Duration.P99 != tc.p99 || first.Memory.P100 != tc.firstMem100 {
				t.Errorf("first function %s: duration avg %g p99 %g, memory p100 %g; want %s..., %g, %g, %g", first.HashFunction,
					first.Duration.Average, first.Duration.P99, first.Memory.P100, tc.firstHash, tc.firstAvg, tc.p99, tc.firstMem100)
			}
			if !strings.HasPrefix(last.HashFunction, tc.lastHash) || last.Duration.P50 != tc.lastP50 || last.Memory.P50 != tc.lastMe {
				t.Errorf("last function %s: duration p50 %g, memory p50 %g; want %s..., %g, %g", last.HashFunction,
					last.Duration.P50, last.Memory.P50, tc.lastHash, tc.lastP50, tc.lastMe)
			}
			names := map[string]bool{}
			for i, f := range tr.Functions {
				if f.Index != i || len(f.PerMinute) != tc.minutes || f.Duration.Count <= 0 || f.Memory.SampleCount <= 0 {
					t.Fatalf("function %d: index %d, %d minutes, duration count %g, memory samples %g", i, f.Index,
						len(f.PerMinute), f.Duration.Count, f.Memory.SampleCount)
				}
				if names[f.Name] || !dnsLabel.MatchString(f.Name) {
					t.Fatalf("function %d: name %q duplicate or not a DNS label", i, f.Name)
				}
				names[f.Name] = true
			}
		})
	}
}

func TestAzure100IsSubsetOfAzure500(t *testing.T) {
	t.Parallel()
	small, err := ReadTrace(traceDir(t, "azure_100"))
	if err != nil {
		t.Fatal(err)
	}
	big, err := ReadTrace(traceDir(t, "azure_500"))
	if err != nil {
		t.Fatal(err)
	}
	byHash := map[string]*Function{}
	for _, f := range big.Functions {
		byHash[f.HashFunction] = f
	}
	for _, f := range small.Functions {
		g := byHash[f.HashFunction]
		if g == nil {
			t.Fatalf("azure_100 function %s not in azure_500", f.HashFunction)
		}
		if g.Duration != f.Duration || g.Memory != f.Memory || g.PerMinute[7] != f.PerMinute[7] {
			t.Fatalf("function %s joins differently in azure_100 and azure_500", f.HashFunction)
		}
	}
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

func TestParseAzure2021Samples(t *testing.T) {
	t.Parallel()
	// The README says 198 for Azure2021_200.csv; the file holds 199 rows
	// (the last without a final newline).
	for file, calls := range map[string]int{"Azure2021_30.csv": 29, "Azure2021_200.csv": 199} {
		tr, err := ReadTrace(filepath.Join(traceDir(t, "azure2021"), file))
		if err != nil {
			t.Fatal(err)
		}
		if tr.Format != FormatAzure2021 || len(tr.Calls) != calls || len(tr.Functions) == 0 {
			t.Fatalf("%s: format %s, %d calls, %d functions; want azure2021, %d calls", file, tr.Format, len(tr.Calls),
				len(tr.Functions), calls)
		}
		if tr.Calls[0].Start != 0 {
			t.Errorf("%s: first call at %v, want 0", file, tr.Calls[0].Start)
		}
		for i := 1; i < len(tr.Calls); i++ {
			if tr.Calls[i].Start < tr.Calls[i-1].Start {
				t.Fatalf("%s: calls not sorted at %d", file, i)
			}
		}
		s, err := NewTraceSchedule(tr, TraceOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for inv := range s.All() {
			n++
			if inv.Exec < MinExec || inv.Exec > MaxExec {
				t.Fatalf("%s: exec %v out of bounds", file, inv.Exec)
			}
		}
		if n != calls || s.Planned() != calls {
			t.Errorf("%s: schedule yields %d, plans %d; want %d", file, n, s.Planned(), calls)
		}
	}
}

func TestParseAzure2021Synthetic(t *testing.T) {
	in := "app,func,end_timestamp,duration\n" +
		"a,F1,10.5,0.5\n" + // starts at 10
		"a,f2,12,1\n" + // 11
		"a,F1,70,0.25\n" // 69.75
	tr, err := ParseAzure2021(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Functions) != 2 || tr.Functions[0].Name != "trace-0-f1" || tr.Functions[1].Name != "trace-1-f2" {
		t.Fatalf("functions %v %v", tr.Functions[0].Name, tr.Functions[1].Name)
	}
	want := []Call{{0, 0, 500 * time.Millisecond}, {1, time.Second, time.Second}, {0, 59750 * time.Millisecond, 250 * time.Millisecond}}
	for i, c := range tr.Calls {
		if c != want[i] {
			t.Errorf("call %d = %+v, want %+v", i, c, want[i])
		}
	}
	if tr.Minutes() != 1 {
		t.Errorf("minutes %d, want 1", tr.Minutes())
	}
}

const (
	synthInvocations = "HashOwner,HashApp,HashFunction,Trigger,10,11,12\n" +
		"o1,a1,AAAAAAAAAAAA,http,3,0,2\n" +
		"o1,a1,nodur,http,1,1,1\n" +
		"o2,a2,bbbb,timer,1.0,5,0\n"
	synthDurations = "HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,percentile_Average_1,percentile_Average_25,percentile_Average_50,percentile_Average_75,percentile_Average_99,percentile_Average_100\n" +
		"o2,a2,bbbb,100,10,0,200,0,10,50,100,150,190,200\n" +
		"o1,a1,AAAAAAAAAAAA,5,3,1,9,1,1,2,5,7,9,9\n"
	// memory.csv with HashFunction first, as in the azure samples.
	synthMemory = "HashFunction,HashOwner,HashApp,SampleCount,AverageAllocatedMb,AverageAllocatedMb_pct1,AverageAllocatedMb_pct5,AverageAllocatedMb_pct25,AverageAllocatedMb_pct50,AverageAllocatedMb_pct75,AverageAllocatedMb_pct95,AverageAllocatedMb_pct99,AverageAllocatedMb_pct100\n" +
		"AAAAAAAAAAAA,o1,a1,4,100,90,91,95,100,105,110,115,120\n" +
		"nodur,o1,a1,4,100,90,91,95,100,105,110,115,120\n" +
		"bbbb,o2,a2,4,10,9,9,9,10,11,12,12,12\n"
)

func parseSynth(t testing.TB) *Trace {
	t.Helper()
	tr, err := ParseAzure2019(strings.NewReader(synthInvocations), strings.NewReader(synthDurations), strings.NewReader(synthMemory))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestParseAzure2019Synthetic(t *testing.T) {
	tr := parseSynth(t)
	if tr.Skipped != 1 || len(tr.Functions) != 2 {
		t.Fatalf("%d functions, %d skipped; want 2, 1 (no durations row for nodur)", len(tr.Functions), tr.Skipped)
	}
	a, b := tr.Functions[0], tr.Functions[1]
	if a.Name != "trace-0-aaaaaaaa" || b.Name != "trace-1-bbbb" {
		t.Errorf("names %q %q", a.Name, b.Name)
	}
	if got := a.PerMinute; len(got) != 3 || got[0] != 3 || got[2] != 2 {
		t.Errorf("a per minute %v", got)
	}
	if got := b.PerMinute; got[0] != 1 || got[1] != 5 {
		t.Errorf("b per minute %v (1.0 is a count)", got)
	}
	if a.Duration.P50 != 5 || a.Memory.P100 != 120 || b.Duration.P99 != 190 || b.Memory.P1 != 9 {
		t.Errorf("joins wrong: %+v %+v %+v %+v", a.Duration, a.Memory, b.Duration, b.Memory)
	}
	if strings.Join(tr.MinuteColumns, ",") != "10,11,12" {
		t.Errorf("minute columns %v", tr.MinuteColumns)
	}
}

func TestParseAzure2019Errors(t *testing.T) {
	tests := map[string][3]string{
		"bad count":       {strings.Replace(synthInvocations, "3,0,2", "3,x,2", 1), synthDurations, synthMemory},
		"negative count":  {strings.Replace(synthInvocations, "3,0,2", "3,-1,2", 1), synthDurations, synthMemory},
		"missing column":  {synthInvocations, strings.Replace(synthDurations, "percentile_Average_99,", "p99,", 1), synthMemory},
		"no minutes":      {"HashOwner,HashApp,HashFunction,Trigger\no,a,f,http\n", synthDurations, synthMemory},
		"empty":           {"", synthDurations, synthMemory},
		"bad duration":    {synthInvocations, strings.Replace(synthDurations, "100,10,0", "abc,10,0", 1), synthMemory},
		"ragged csv rows": {synthInvocations + "o,a,f,http,1\n", synthDurations, synthMemory},
	}
	for name, in := range tests {
		if _, err := ParseAzure2019(strings.NewReader(in[0]), strings.NewReader(in[1]), strings.NewReader(in[2])); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestFunctionName(t *testing.T) {
	for _, tc := range []struct {
		i    int
		hash string
		want string
	}{
		{0, "c13acdc7567b225971", "trace-0-c13acdc7"},
		{12, "ABCDEF", "trace-12-abcdef"},
		{3, "a_b.c-d/e+f=g", "trace-3-abcdefg"},
		{4, "___", "trace-4"},
	} {
		if got := FunctionName(tc.i, tc.hash); got != tc.want || !dnsLabel.MatchString(got) {
			t.Errorf("FunctionName(%d, %q) = %q, want %q", tc.i, tc.hash, got, tc.want)
		}
	}
}

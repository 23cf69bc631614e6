package loadgen

import (
	"bytes"
	"encoding/csv"
	"image/png"
	"os"
	"strings"
	"testing"
	"time"
)

func sampleResult() *Result {
	recs := []Record{rec("fn-b", 30, 12.5, 10), rec("fn-a", 10, 45, 40)}
	recs[1].Temp = Cold
	recs = append(recs, Record{Function: "fn,odd", Start: 20 * time.Millisecond, Scheduled: 19 * time.Millisecond,
		Latency: 3 * time.Millisecond, Status: 503, Err: "http 503", Requested: 7 * time.Millisecond, MemoryMiB: 64})
	w := rec("fn-a", 0, 1, 1)
	w.Warmup = true
	recs = append(recs, w)
	return &Result{Title: "sample", OpenLoop: true, Planned: 4, Length: time.Second, PlannedPerSecond: []int{4},
		Started: time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC), Records: recs}
}

func TestWriteCSV(t *testing.T) {
	var b bytes.Buffer
	if err := WriteCSV(&b, sampleResult()); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 4 { // header + 3 measured (the warm-up is left out)
		t.Fatalf("%d rows:\n%v", len(rows), rows)
	}
	if strings.Join(rows[0], ",") != strings.Join(CSVHeader, ",") {
		t.Errorf("header %v", rows[0])
	}
	want := [][]string{
		{"fn-a", "2025-03-04T05:06:07.01Z", "10.000", "10.000", "45.000", "40.000", "5.000", "cold", "200", "", "40", "0"},
		{"fn,odd", "2025-03-04T05:06:07.02Z", "20.000", "19.000", "3.000", "", "", "", "503", "http 503", "7", "64"},
		{"fn-b", "2025-03-04T05:06:07.03Z", "30.000", "30.000", "12.500", "10.000", "2.500", "warm", "200", "", "10", "0"},
	}
	for i, w := range want {
		if got := strings.Join(rows[i+1], "|"); got != strings.Join(w, "|") {
			t.Errorf("row %d:\n got %s\nwant %s", i+1, got, strings.Join(w, "|"))
		}
	}
}

func TestCreateOutputNeverOverwrites(t *testing.T) {
	dir := t.TempDir() + "/sub"
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	a, err := CreateOutput(dir, "rps cold/200", now)
	if err != nil {
		t.Fatal(err)
	}
	b, err := CreateOutput(dir, "rps cold/200", now)
	if err != nil {
		t.Fatal(err)
	}
	a.CSV.Close()
	b.CSV.Close()
	if a.Prefix != dir+"/baton-load-20250102-030405-rps_cold_200" || b.Prefix != a.Prefix+"-2" {
		t.Errorf("prefixes %q, %q", a.Prefix, b.Prefix)
	}
}

func TestWritePlots(t *testing.T) {
	dir := t.TempDir()
	for name, r := range map[string]*Result{"sample": sampleResult(), "empty": {Title: "nothing"}} {
		files, err := WritePlots(dir+"/"+name, r, Summarize(r))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) != 3 {
			t.Fatalf("%s: files %v", name, files)
		}
		for _, f := range files {
			fh, err := os.Open(f)
			if err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(fh)
			fh.Close()
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 200 {
				t.Errorf("%s: %v", f, b)
			}
		}
	}
}

func TestSummaryText(t *testing.T) {
	r := sampleResult()
	r.Records[0].Start += 30 * time.Millisecond // late: behind
	var b strings.Builder
	if err := Summarize(r).WriteText(&b, []string{"x.csv", "x-latency.png"}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"baton load: sample",
		"4 planned, 4 sent, 3 answered (+1 in the warm-up, not counted)",
		"end to end   p50 12.50ms",
		"cold starts  1 (33.3%)",
		"errors       1 (33.33%): http 503 ×1",
		"across 2 functions",
		"FELL BEHIND",
		"files        x.csv\n               x-latency.png\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		172 * time.Microsecond:   "172µs",
		41090 * time.Microsecond: "41.09ms",
		5037 * time.Millisecond:  "5.037s",
	} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

package node

import (
	"bytes"
	"encoding/json"
	"maps"
	"strings"
	"testing"
)

func TestServicesFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     string
		want    map[string]string
		wantErr string
	}{
		{"none", "", nil, ""},
		{"two", "http=127.0.0.1:7000, grpc=:7001", map[string]string{"http": "127.0.0.1:7000", "grpc": ":7001"}, ""},
		{"trailing comma", "http=127.0.0.1:7000,", map[string]string{"http": "127.0.0.1:7000"}, ""},
		{"no equals", "http", nil, "want name=host:port"},
		{"no port", "http=127.0.0.1", nil, "want host:port"},
		{"port zero", "http=:0", nil, "port must be a number from 1 to 65535"},
		{"bad name", "HTTP API=:7000", nil, "service name"},
		{"twice", "http=:7000,http=:7001", nil, "named twice"},
		{"too long", "a=" + strings.Repeat("h", 200) + ":1", nil, "bytes encoded"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"SERVICES": tc.env}
			c, err := FromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
			if err == nil {
				err = c.Validate()
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "SERVICES") {
					t.Fatalf("err = %v, want one naming SERVICES with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Services) != len(tc.want) || (len(tc.want) > 0 && !maps.Equal(c.Services, tc.want)) {
				t.Fatalf("Services = %v, want %v", c.Services, tc.want)
			}
		})
	}
}

func TestServicesEncoding(t *testing.T) {
	svcs := advertiseServices(map[string]string{"http": ":7000", "grpc": "0.0.0.0:7001", "admin": "10.0.0.5:7002"}, "10.0.0.9")
	enc := encodeServices(svcs)
	if want := "admin=10.0.0.5:7002,grpc=10.0.0.9:7001,http=10.0.0.9:7000"; enc != want {
		t.Fatalf("encoded %q, want %q", enc, want)
	}
	if got := decodeServices(enc); !maps.Equal(got, svcs) {
		t.Fatalf("decoded %v, want %v", got, svcs)
	}
	if got := decodeServices(""); got == nil || len(got) != 0 {
		t.Fatalf("decodeServices(\"\") = %#v, want an empty map", got)
	}
}

func TestLogFormat(t *testing.T) {
	tests := []struct {
		format  string
		json    bool
		wantErr bool
	}{
		{"", false, false},
		{"text", false, false},
		{"json", true, false},
		{"xml", false, true},
	}
	for _, tc := range tests {
		t.Run("LOG_FORMAT="+tc.format, func(t *testing.T) {
			env := map[string]string{"LOG_FORMAT": tc.format, "LOG_LEVEL": "warn"}
			c, err := FromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
			if err == nil {
				err = c.Validate()
			}
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "LOG_FORMAT") {
					t.Fatalf("err = %v, want one naming LOG_FORMAT", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			log := c.NewLogger(&buf)
			log.Info("hidden below warn")
			log.Warn("shown", "k", "v")
			line := strings.TrimSpace(buf.String())
			if strings.Contains(line, "hidden") || strings.Count(line, "\n") != 0 {
				t.Fatalf("log = %q, want one warn line", line)
			}
			var obj map[string]any
			isJSON := json.Unmarshal([]byte(line), &obj) == nil
			if isJSON != tc.json {
				t.Fatalf("log line %q: JSON = %v, want %v", line, isJSON, tc.json)
			}
		})
	}
}

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParsePhraseReadsTextAndAnOptionalBoost(t *testing.T) {
	cases := []struct {
		value string
		text  string
		boost float32
	}{
		{"Kubernetes", "Kubernetes", defaultBoost},
		{"Dr. Okonkwo:12.5", "Dr. Okonkwo", 12.5},
		{"Re:Invent", "Re:Invent", defaultBoost},
		{"10:30:20", "10:30", 20},
	}
	for _, c := range cases {
		phrase, err := parsePhrase(c.value)
		if err != nil {
			t.Fatalf("%q: %v", c.value, err)
		}
		if phrase.GetText() != c.text || phrase.GetBoost() != c.boost {
			t.Errorf("%q: got %q:%v, want %q:%v", c.value, phrase.GetText(), phrase.GetBoost(), c.text, c.boost)
		}
	}
}

func TestParsePhraseRefusesABoostOutOfRange(t *testing.T) {
	for _, value := range []string{"ok:0", "ok:21", "ok:-1", "ok:NaN", ":5", " "} {
		if _, err := parsePhrase(value); err == nil {
			t.Errorf("%q: no error", value)
		}
	}
}

func TestPhrasesFileSkipsCommentsAndNamesTheBadLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "phrases.txt")
	if err := os.WriteFile(path, []byte("# names\n\nhelm:5\nkubectl\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := phraseFlags{phrases: []string{"argo:3"}, file: path}
	phrases, err := flags.build()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range phrases {
		got = append(got, p.GetText())
	}
	if strings.Join(got, ",") != "argo,helm,kubectl" || phrases[2].GetBoost() != defaultBoost {
		t.Errorf("got %v", phrases)
	}
	if err := os.WriteFile(path, []byte("ok\nbad:99\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := flags.build(); err == nil || !strings.Contains(err.Error(), "phrases.txt:2") {
		t.Errorf("want an error naming line 2, got %v", err)
	}
}

package main

import (
	"bufio"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	parakeetv1 "github.com/parakeet-server/parakeet-server/client/go/gen/parakeet/v1"
)

// defaultBoost is what a phrase given without a boost gets, as in parakeet-client.
const defaultBoost = 8.0

// phraseFlags holds -phrase (repeatable) and -phrases-file.
type phraseFlags struct {
	phrases []string
	file    string
}

func (p *phraseFlags) String() string { return strings.Join(p.phrases, ", ") }

func (p *phraseFlags) Set(value string) error {
	p.phrases = append(p.phrases, value)
	return nil
}

func addPhraseFlags(flags *flag.FlagSet, p *phraseFlags) {
	flags.Var(p, "phrase", "a word or phrase to favour, `TEXT[:BOOST]` with BOOST in (0, 20] (default 8); repeat for more")
	flags.StringVar(&p.file, "phrases-file", "", "phrases to favour from a `file`, one TEXT[:BOOST] per line (# comments)")
}

// parsePhrase reads TEXT or TEXT:BOOST; a colon not followed by a number belongs to the text.
func parsePhrase(value string) (*parakeetv1.Phrase, error) {
	if i := strings.LastIndex(value, ":"); i >= 0 {
		if boost, err := strconv.ParseFloat(strings.TrimSpace(value[i+1:]), 64); err == nil {
			text := strings.TrimSpace(value[:i])
			if math.IsNaN(boost) || boost <= 0 || boost > 20 {
				return nil, fmt.Errorf("phrase %q: the boost must be in (0, 20], not %s", value, value[i+1:])
			}
			if text == "" {
				return nil, fmt.Errorf("phrase %q has no text before its boost", value)
			}
			return &parakeetv1.Phrase{Text: text, Boost: float32(boost)}, nil
		}
	}
	if strings.TrimSpace(value) == "" {
		return nil, fmt.Errorf("a phrase is empty")
	}
	return &parakeetv1.Phrase{Text: strings.TrimSpace(value), Boost: defaultBoost}, nil
}

// build returns the phrases of -phrase and -phrases-file.
func (p *phraseFlags) build() ([]*parakeetv1.Phrase, error) {
	var out []*parakeetv1.Phrase
	for _, value := range p.phrases {
		phrase, err := parsePhrase(value)
		if err != nil {
			return nil, err
		}
		out = append(out, phrase)
	}
	if p.file == "" {
		return out, nil
	}
	f, err := os.Open(p.file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	lines := bufio.NewScanner(f)
	for number := 1; lines.Scan(); number++ {
		line := strings.TrimSpace(lines.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		phrase, err := parsePhrase(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", p.file, number, err)
		}
		out = append(out, phrase)
	}
	return out, lines.Err()
}

// Command parakeet-stream streams a WAV file to a parakeet-server over StreamingTranscribe and
// prints the partial results as they arrive, then the final transcript and the request's figures.
//
//	parakeet-stream [flags] FILE.wav
//
// With -json every line of stdout is one JSON object: {"type":"partial",...} for each partial
// result and one {"type":"final",...} at the end. With -endpointing (or -single-utterance) the
// server closes an utterance at each pause: each is printed as it closes ({"type":"utterance",...}
// with -json), and a partial that carries a speech event names it. Exit status: 0 on success, 1
// when the server refuses the request, 2 for bad flags or an unreadable file, 3 when the server
// is unreachable or still loading.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	parakeetv1 "github.com/parakeet-server/parakeet-server/client/go/gen/parakeet/v1"
	"github.com/parakeet-server/parakeet-server/client/go/internal/wav"
)

const (
	exitFailed      = 1
	exitUsage       = 2
	exitUnavailable = 3
)

var modes = map[string]parakeetv1.FinalizationMode{
	"auto":         parakeetv1.FinalizationMode_FINALIZATION_MODE_AUTO,
	"streaming":    parakeetv1.FinalizationMode_FINALIZATION_MODE_STREAMING,
	"full-context": parakeetv1.FinalizationMode_FINALIZATION_MODE_FULL_CONTEXT,
}

type options struct {
	server   string
	mode     string
	chunkMS  int
	realtime bool
	json     bool
	words    bool
	interim  bool
	timeout  time.Duration
	endpoint endpointFlags
	phrases  phraseFlags
}

// A partial result as printed with -json.
type partialLine struct {
	Type                  string  `json:"type"`
	FinalizedText         string  `json:"finalized_text"`
	DraftText             string  `json:"draft_text"`
	AudioProcessedSeconds float64 `json:"audio_processed_seconds"`
	SpeechEvent           string  `json:"speech_event,omitempty"`
}

// The final result as printed with -json; transcript and metrics are the messages' proto JSON
// with field names as in the .proto.
type finalLine struct {
	Type                       string          `json:"type"`
	Text                       string          `json:"text"`
	AudioProcessedSeconds      float64         `json:"audio_processed_seconds"`
	FinalizationLatencySeconds float64         `json:"finalization_latency_seconds"`
	Transcript                 json.RawMessage `json:"transcript"`
	Metrics                    json.RawMessage `json:"metrics"`
}

type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }

func main() {
	flags := flag.NewFlagSet("parakeet-stream", flag.ContinueOnError)
	flags.Usage = func() {
		fmt.Fprintln(flags.Output(), "usage: parakeet-stream [flags] FILE.wav   (16-bit PCM or 32-bit float, any rate, 1-2 channels)")
		flags.PrintDefaults()
	}
	var o options
	flags.StringVar(&o.server, "server", "localhost:50051", "server address `host:port`")
	flags.StringVar(&o.mode, "mode", "auto", "finalization mode: auto, streaming or full-context")
	flags.IntVar(&o.chunkMS, "chunk-ms", 100, "milliseconds of audio per message")
	flags.BoolVar(&o.realtime, "realtime", false, "send the audio no faster than it plays")
	flags.BoolVar(&o.json, "json", false, "print one JSON object per line")
	flags.BoolVar(&o.words, "words", false, "ask for word timestamps (printed in text mode)")
	flags.BoolVar(&o.interim, "interim", true, "ask for partial results (-interim=false: final only)")
	flags.DurationVar(&o.timeout, "timeout", 10*time.Minute, "deadline for the whole stream")
	o.endpoint.register(flags)
	addPhraseFlags(flags, &o.phrases)
	if err := flags.Parse(os.Args[1:]); err != nil {
		os.Exit(exitUsage)
	}
	if err := run(o, flags.Args()); err != nil {
		code := exitFailed
		var exit exitError
		if errors.As(err, &exit) {
			code = exit.code
		}
		fmt.Fprintln(os.Stderr, "parakeet-stream:", err)
		os.Exit(code)
	}
}

func run(o options, args []string) error {
	mode, ok := modes[o.mode]
	if !ok {
		return exitError{exitUsage, fmt.Errorf("-mode must be auto, streaming or full-context, got %q", o.mode)}
	}
	if len(args) != 1 {
		return exitError{exitUsage, errors.New("give exactly one WAV file")}
	}
	if o.chunkMS <= 0 {
		return exitError{exitUsage, fmt.Errorf("-chunk-ms must be positive, got %d", o.chunkMS)}
	}
	phrases, err := o.phrases.build()
	if err != nil {
		return exitError{exitUsage, err}
	}
	file, err := readWAV(args[0])
	if err != nil {
		return exitError{exitUsage, err}
	}

	conn, err := grpc.NewClient(o.server, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return exitError{exitUsage, fmt.Errorf("bad server address %q: %w", o.server, err)}
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	stream, err := parakeetv1.NewTranscriptionServiceClient(conn).StreamingTranscribe(ctx)
	if err != nil {
		return rpcError(o.server, err)
	}

	encoding := parakeetv1.AudioFormat_ENCODING_LINEAR16
	if file.Format.Float {
		encoding = parakeetv1.AudioFormat_ENCODING_FLOAT32
	}
	config := &parakeetv1.StreamingConfig{
		Format: &parakeetv1.AudioFormat{
			Encoding:        encoding,
			SampleRateHertz: int32(file.Format.SampleRate),
			ChannelCount:    int32(file.Format.Channels),
		},
		InterimResults:   o.interim,
		Options:          &parakeetv1.TranscriptionOptions{WordTimestamps: o.words || o.json, Phrases: phrases},
		FinalizationMode: mode,
		Endpointing:      o.endpoint.config(),
	}
	// Audio goes out from its own goroutine so partial results are read while it is sent.
	sent := make(chan error, 1)
	go func() { sent <- send(stream, config, file, o) }()

	var final *parakeetv1.StreamingTranscribeResponse
	for {
		response, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return rpcError(o.server, err)
		}
		if response.GetIsFinal() {
			final = response
			continue
		}
		if response.GetUtterance() != nil {
			if err := printUtterance(o, response); err != nil {
				return err
			}
			continue
		}
		if err := printPartial(o, response); err != nil {
			return err
		}
	}
	if err := <-sent; err != nil {
		return rpcError(o.server, err)
	}
	if final == nil {
		return errors.New("the stream ended without a final result")
	}
	return printFinal(o, final)
}

func readWAV(path string) (wav.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return wav.File{}, err
	}
	defer f.Close()
	file, err := wav.Read(f)
	if err != nil {
		return wav.File{}, fmt.Errorf("%s: %w", path, err)
	}
	return file, nil
}

// send writes the config, then the audio in chunks of -chunk-ms, then half-closes.
func send(stream grpc.BidiStreamingClient[parakeetv1.StreamingTranscribeRequest, parakeetv1.StreamingTranscribeResponse], config *parakeetv1.StreamingConfig, file wav.File, o options) error {
	err := stream.Send(&parakeetv1.StreamingTranscribeRequest{
		Request: &parakeetv1.StreamingTranscribeRequest_Config{Config: config},
	})
	if err != nil {
		return sendError(err)
	}
	frames := max(1, file.Format.SampleRate*o.chunkMS/1000)
	chunkBytes := frames * file.Format.FrameBytes()
	start := time.Now()
	for offset := 0; offset < len(file.Data); offset += chunkBytes {
		if o.realtime {
			playedUntil := time.Duration(float64(offset/file.Format.FrameBytes()) / float64(file.Format.SampleRate) * float64(time.Second))
			time.Sleep(time.Until(start.Add(playedUntil)))
		}
		end := min(offset+chunkBytes, len(file.Data))
		err := stream.Send(&parakeetv1.StreamingTranscribeRequest{
			Request: &parakeetv1.StreamingTranscribeRequest_Audio{Audio: file.Data[offset:end]},
		})
		if err != nil {
			return sendError(err)
		}
	}
	return stream.CloseSend()
}

// sendError drops io.EOF: it means the server ended the stream, whose status Recv reports.
func sendError(err error) error {
	if err == io.EOF {
		return nil
	}
	return err
}

func rpcError(server string, err error) error {
	s := status.Convert(err)
	switch s.Code() {
	case codes.Unavailable:
		return exitError{exitUnavailable, fmt.Errorf("server %s is unavailable (down or still loading the model): %s", server, s.Message())}
	case codes.DeadlineExceeded:
		return exitError{exitFailed, fmt.Errorf("DEADLINE_EXCEEDED: %s", s.Message())}
	default:
		return exitError{exitFailed, fmt.Errorf("%s: %s", strings.ToUpper(codeName(s.Code())), s.Message())}
	}
}

func codeName(c codes.Code) string {
	// codes.Code's String is CamelCase ("InvalidArgument"); gRPC documents them in SNAKE_CASE.
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func printPartial(o options, r *parakeetv1.StreamingTranscribeResponse) error {
	if o.json {
		return printJSON(partialLine{"partial", r.GetFinalizedText(), r.GetDraftText(), r.GetAudioProcessedSeconds(), eventName(r.GetSpeechEvent())})
	}
	_, err := fmt.Printf("[%7.2fs] %s ‹%s›\n", r.GetAudioProcessedSeconds(), r.GetFinalizedText(), r.GetDraftText())
	return err
}

func printFinal(o options, r *parakeetv1.StreamingTranscribeResponse) error {
	m := r.GetMetrics()
	if o.json {
		marshal := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}
		transcript, err := marshal.Marshal(orEmpty(r.GetTranscript(), &parakeetv1.Transcript{}))
		if err != nil {
			return err
		}
		metrics, err := marshal.Marshal(orEmpty(m, &parakeetv1.RequestMetrics{}))
		if err != nil {
			return err
		}
		return printJSON(finalLine{
			"final", r.GetTranscript().GetText(), r.GetAudioProcessedSeconds(),
			r.GetFinalizationLatencySeconds(), transcript, metrics,
		})
	}
	fmt.Println(r.GetTranscript().GetText())
	if o.words {
		for _, segment := range r.GetTranscript().GetSegments() {
			for _, w := range segment.GetWords() {
				fmt.Printf("  %8.2f %8.2f  %.2f  %s\n", w.GetStartTime().AsDuration().Seconds(),
					w.GetEndTime().AsDuration().Seconds(), w.GetConfidence(), w.GetText())
			}
		}
	}
	fmt.Fprintf(os.Stderr, "PERF audio=%.2fs words=%d time=%.3fs rtf=%.3f wps=%.1f ms_per_word=%.1f finalization_latency=%.3fs\n",
		m.GetAudioSeconds(), m.GetWordCount(), m.GetProcessingSeconds(), m.GetRealTimeFactor(),
		m.GetWordsPerSecond(), m.GetMillisecondsPerWord(), r.GetFinalizationLatencySeconds())
	return nil
}

func orEmpty[M proto.Message](message M, empty M) M {
	if message.ProtoReflect().IsValid() {
		return message
	}
	return empty
}

func printJSON(v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Printf("%s\n", line)
	return err
}

// endpointFlags are the endpointing flags: StreamingConfig.endpointing.
type endpointFlags struct {
	on              bool
	single          bool
	trailingSilence time.Duration
	maxUtterance    time.Duration
}

func (e *endpointFlags) register(flags *flag.FlagSet) {
	flags.BoolVar(&e.on, "endpointing", false, "close an utterance at each pause and print each as it closes")
	flags.BoolVar(&e.single, "single-utterance", false, "end the stream after the first utterance (implies -endpointing)")
	flags.DurationVar(&e.trailingSilence, "trailing-silence", 0, "a pause this long ends an utterance (0: the server's 800ms)")
	flags.DurationVar(&e.maxUtterance, "max-utterance", 0, "close an utterance this long even without a pause (0: the server's 30s)")
}

// config is the StreamingConfig.endpointing the flags ask for; nil without endpointing.
func (e endpointFlags) config() *parakeetv1.EndpointingConfig {
	if !e.on && !e.single {
		return nil
	}
	config := &parakeetv1.EndpointingConfig{SingleUtterance: e.single}
	if e.trailingSilence != 0 {
		config.TrailingSilence = durationpb.New(e.trailingSilence)
	}
	if e.maxUtterance != 0 {
		config.MaxUtterance = durationpb.New(e.maxUtterance)
	}
	return config
}

// An utterance as printed with -json; its transcript is the message's proto JSON.
type utteranceLine struct {
	Type             string          `json:"type"`
	SpeechEvent      string          `json:"speech_event"`
	Index            int32           `json:"index"`
	Text             string          `json:"text"`
	EndReason        string          `json:"end_reason"`
	AudioStart       float64         `json:"audio_start_seconds"`
	AudioEnd         float64         `json:"audio_end_seconds"`
	ClosedAt         float64         `json:"closed_at_seconds"`
	EndOfSpeechDelay float64         `json:"end_of_speech_latency_seconds"`
	Transcript       json.RawMessage `json:"transcript"`
}

func printUtterance(o options, r *parakeetv1.StreamingTranscribeResponse) error {
	u := r.GetUtterance()
	reason := strings.ToLower(strings.TrimPrefix(u.GetEndReason().String(), "END_REASON_"))
	if o.json {
		marshal := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}
		transcript, err := marshal.Marshal(orEmpty(u.GetTranscript(), &parakeetv1.Transcript{}))
		if err != nil {
			return err
		}
		return printJSON(utteranceLine{
			"utterance", eventName(r.GetSpeechEvent()), u.GetIndex(), u.GetTranscript().GetText(), reason,
			u.GetAudioStart().AsDuration().Seconds(), u.GetAudioEnd().AsDuration().Seconds(),
			u.GetClosedAt().AsDuration().Seconds(), u.GetEndOfSpeechLatencySeconds(), transcript,
		})
	}
	_, err := fmt.Printf("[utterance %d %7.2fs-%.2fs %s] %s\n", u.GetIndex(), u.GetAudioStart().AsDuration().Seconds(),
		u.GetAudioEnd().AsDuration().Seconds(), reason, u.GetTranscript().GetText())
	return err
}

// eventName is "speech_begin", "end_of_utterance", ... ("" for none).
func eventName(e parakeetv1.SpeechEvent) string {
	if e == parakeetv1.SpeechEvent_SPEECH_EVENT_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(e.String(), "SPEECH_EVENT_"))
}

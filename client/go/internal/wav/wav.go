// Package wav reads the header of a RIFF/WAVE file holding 16-bit integer or 32-bit float PCM.
package wav

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Sample encodings the server accepts for a stream.
const (
	formatPCM        = 1
	formatFloat      = 3
	formatExtensible = 0xFFFE
)

// Format describes the samples in the data chunk.
type Format struct {
	SampleRate    int
	Channels      int
	BitsPerSample int
	Float         bool // 32-bit IEEE float rather than 16-bit signed integer
}

// FrameBytes is the size of one sample of every channel.
func (f Format) FrameBytes() int { return f.Channels * f.BitsPerSample / 8 }

// File is a parsed WAV file: its format and its raw little-endian sample bytes.
type File struct {
	Format Format
	Data   []byte
}

// Seconds is the length of the audio.
func (f File) Seconds() float64 {
	return float64(len(f.Data)/f.Format.FrameBytes()) / float64(f.Format.SampleRate)
}

// Read parses a whole WAV file. It walks the chunk list, so "LIST", "fact" and other chunks
// before or after "data" are skipped, and a data size of 0 or 0xFFFFFFFF (written by tools
// that stream to a pipe) means "to the end of the file".
func Read(r io.Reader) (File, error) {
	var riff [12]byte
	if _, err := io.ReadFull(r, riff[:]); err != nil {
		return File{}, errors.New("not a WAV file: shorter than a RIFF header")
	}
	if string(riff[0:4]) != "RIFF" || string(riff[8:12]) != "WAVE" {
		return File{}, errors.New("not a WAV file: no RIFF/WAVE header")
	}
	var format *Format
	for {
		var header [8]byte
		if _, err := io.ReadFull(r, header[:]); err != nil {
			if format == nil {
				return File{}, errors.New("not a WAV file: no \"fmt \" chunk")
			}
			return File{}, errors.New("WAV file has no \"data\" chunk")
		}
		id := string(header[0:4])
		size := binary.LittleEndian.Uint32(header[4:8])
		switch id {
		case "fmt ":
			body := make([]byte, size+size%2)
			if _, err := io.ReadFull(r, body); err != nil || size < 16 {
				return File{}, errors.New("WAV file has a truncated \"fmt \" chunk")
			}
			parsed, err := parseFormat(body[:size])
			if err != nil {
				return File{}, err
			}
			format = &parsed
		case "data":
			if format == nil {
				return File{}, errors.New("WAV file has \"data\" before \"fmt \"")
			}
			var data []byte
			var err error
			if size == 0 || size == 0xFFFFFFFF {
				data, err = io.ReadAll(r)
			} else {
				data = make([]byte, size)
				_, err = io.ReadFull(r, data)
			}
			if err != nil {
				return File{}, fmt.Errorf("WAV file is truncated: %w", err)
			}
			frame := format.FrameBytes()
			data = data[:len(data)/frame*frame] // a partial last frame is padding, not audio
			return File{Format: *format, Data: data}, nil
		default:
			if _, err := io.CopyN(io.Discard, r, int64(size)+int64(size%2)); err != nil {
				return File{}, fmt.Errorf("WAV file is truncated in chunk %q", id)
			}
		}
	}
}

func parseFormat(body []byte) (Format, error) {
	tag := binary.LittleEndian.Uint16(body[0:2])
	f := Format{
		Channels:      int(binary.LittleEndian.Uint16(body[2:4])),
		SampleRate:    int(binary.LittleEndian.Uint32(body[4:8])),
		BitsPerSample: int(binary.LittleEndian.Uint16(body[14:16])),
	}
	if tag == formatExtensible {
		if len(body) < 26 {
			return Format{}, errors.New("WAV file has a truncated WAVE_FORMAT_EXTENSIBLE header")
		}
		tag = binary.LittleEndian.Uint16(body[24:26]) // the sub-format GUID starts with the tag
	}
	switch {
	case tag == formatPCM && f.BitsPerSample == 16:
	case tag == formatFloat && f.BitsPerSample == 32:
		f.Float = true
	default:
		return Format{}, fmt.Errorf(
			"unsupported WAV encoding (format tag %d, %d bits): use 16-bit PCM or 32-bit float",
			tag, f.BitsPerSample)
	}
	if f.Channels < 1 || f.SampleRate < 1 {
		return Format{}, fmt.Errorf("WAV file has %d channels at %d Hz", f.Channels, f.SampleRate)
	}
	return f, nil
}

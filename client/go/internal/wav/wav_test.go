package wav

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func chunk(id string, body []byte) []byte {
	out := append([]byte(id), binary.LittleEndian.AppendUint32(nil, uint32(len(body)))...)
	out = append(out, body...)
	if len(body)%2 == 1 {
		out = append(out, 0)
	}
	return out
}

func fmtBody(tag uint16, channels, rate, bits int) []byte {
	b := binary.LittleEndian.AppendUint16(nil, tag)
	b = binary.LittleEndian.AppendUint16(b, uint16(channels))
	b = binary.LittleEndian.AppendUint32(b, uint32(rate))
	b = binary.LittleEndian.AppendUint32(b, uint32(rate*channels*bits/8))
	b = binary.LittleEndian.AppendUint16(b, uint16(channels*bits/8))
	return binary.LittleEndian.AppendUint16(b, uint16(bits))
}

func riff(chunks ...[]byte) []byte {
	body := []byte("WAVE")
	for _, c := range chunks {
		body = append(body, c...)
	}
	return append(append([]byte("RIFF"), binary.LittleEndian.AppendUint32(nil, uint32(len(body)))...), body...)
}

func TestSkipsOddSizedChunksAndReadsStereo(t *testing.T) {
	data := []byte{1, 0, 2, 0, 3, 0, 4, 0}
	file, err := Read(bytes.NewReader(riff(
		chunk("LIST", []byte("odd")), chunk("fmt ", fmtBody(1, 2, 44100, 16)), chunk("data", data),
		chunk("id3 ", []byte("tail")))))
	if err != nil {
		t.Fatal(err)
	}
	if file.Format != (Format{SampleRate: 44100, Channels: 2, BitsPerSample: 16}) {
		t.Fatalf("format %+v", file.Format)
	}
	if !bytes.Equal(file.Data, data) {
		t.Fatalf("data %v", file.Data)
	}
}

func TestExtensibleFloat(t *testing.T) {
	body := fmtBody(0xFFFE, 1, 48000, 32)
	body = append(body, 22, 0, 32, 0, 4, 0, 0, 0, 3, 0) // cbSize, valid bits, mask, GUID tag 3
	body = append(body, make([]byte, 14)...)
	file, err := Read(bytes.NewReader(riff(chunk("fmt ", body), chunk("data", make([]byte, 8)))))
	if err != nil {
		t.Fatal(err)
	}
	if !file.Format.Float || file.Seconds() != 2.0/48000 {
		t.Fatalf("%+v %v", file.Format, file.Seconds())
	}
}

func TestStreamedDataSizeReadsToTheEnd(t *testing.T) {
	wav := riff(chunk("fmt ", fmtBody(1, 1, 16000, 16)))
	wav = append(wav, []byte("data\xff\xff\xff\xff")...)
	wav = append(wav, 1, 0, 2, 0, 3) // a dangling byte is dropped
	file, err := Read(bytes.NewReader(wav))
	if err != nil {
		t.Fatal(err)
	}
	if len(file.Data) != 4 {
		t.Fatalf("data %v", file.Data)
	}
}

func TestRejections(t *testing.T) {
	for name, c := range map[string]struct {
		input []byte
		want  string
	}{
		"text":      {[]byte("hello, this is not audio"), "no RIFF/WAVE header"},
		"short":     {[]byte("RIFF"), "shorter than a RIFF header"},
		"8-bit":     {riff(chunk("fmt ", fmtBody(1, 1, 8000, 8))), "unsupported WAV encoding"},
		"no data":   {riff(chunk("fmt ", fmtBody(1, 1, 8000, 16))), "no \"data\" chunk"},
		"no fmt":    {riff(chunk("data", []byte{0, 0})), "\"data\" before \"fmt \""},
		"truncated": {riff(chunk("fmt ", fmtBody(1, 1, 8000, 16)))[:30], "truncated"},
	} {
		_, err := Read(bytes.NewReader(c.input))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", name, err, c.want)
		}
	}
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/batonfaas/baton/internal/image"
	"github.com/batonfaas/baton/internal/sandbox/containerd"
)

const imageUsage = `usage:
  baton image build --binary PATH --tag REF [--push] [--insecure-registry] [--output FILE.tar]
  baton image import FILE.tar [--containerd-socket PATH] [--containerd-namespace NS] [--snapshotter NAME]
`

// cmdImage makes and loads OCI images without Docker.
func cmdImage(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, imageUsage)
		return exitError{2}
	}
	switch args[0] {
	case "build":
		return cmdImageBuild(args[1:], stdout, stderr)
	case "import":
		return cmdImageImport(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, imageUsage)
		return nil
	default:
		fmt.Fprintf(stderr, "baton image: unknown command %q\n\n%s", args[0], imageUsage)
		return exitError{2}
	}
}

func cmdImageBuild(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("image build", "image build --binary PATH --tag REF [--push] [--insecure-registry] [--output FILE.tar]", stderr)
	var (
		o        image.BuildOptions
		env, arg multiFlag
	)
	fs.StringVar(&o.Binary, "binary", "", "the executable to package (statically linked: the image has no libc)")
	tag := fs.String("tag", "", "the image reference, e.g. 127.0.0.1:5000/hello:1")
	fs.StringVar(&o.Name, "name", "", "the executable's name in the image, at /NAME (default: its file name)")
	fs.Var(&env, "env", "KEY=VALUE in the image's environment (repeatable)")
	fs.Var(&arg, "arg", "a default argument after the entrypoint (repeatable)")
	push := fs.Bool("push", false, "push the image to its registry (credentials from the Docker config, if any)")
	insecure := fs.Bool("insecure-registry", false, "plain HTTP to the registry when it does not speak TLS (loopback and private addresses get it anyway, as containerd workers do)")
	output := fs.String("output", "", "also write the image as an archive (docker save format) for baton image import")
	fs.BoolVar(&o.AllowDynamic, "allow-dynamic", false, "package a dynamically linked executable anyway")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) > 0:
		return fmt.Errorf("image build: unexpected argument %q", pos[0])
	case o.Binary == "" || *tag == "":
		fs.Usage()
		return errors.New("image build: --binary and --tag are required")
	case !*push && *output == "":
		return errors.New("image build: say where the image goes: --push, --output FILE.tar, or both")
	}
	o.Env, o.Args = env, arg
	ref, err := image.ParseReference(*tag, *insecure)
	if err != nil {
		return err
	}
	img, err := image.Build(o)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	if *output != "" {
		if err := image.WriteArchiveFile(*output, ref, img); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (%s) to %s\n", ref.Name(), digest, *output)
	}
	if *push {
		if err := image.Push(ref, img); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "pushed %s@%s\n", ref.Name(), digest)
	}
	return nil
}

func cmdImageImport(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("image import", "image import FILE.tar [--containerd-socket PATH] [--containerd-namespace NS] [--snapshotter NAME]", stderr)
	var cfg containerd.ImportConfig
	fs.StringVar(&cfg.Socket, "containerd-socket", containerd.DefaultSocket, "the worker's containerd socket")
	fs.StringVar(&cfg.Namespace, "containerd-namespace", containerd.DefaultNamespace, "the workers' containerd namespace")
	fs.StringVar(&cfg.Snapshotter, "snapshotter", containerd.DefaultSnapshotter, "the workers' snapshotter (the image is unpacked for it)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errors.New("image import: give one archive (FILE.tar, from docker save or baton image build --output)")
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return fmt.Errorf("image import: %w", err)
	}
	defer f.Close()
	names, err := containerd.Import(context.Background(), cfg, f)
	for _, n := range names {
		fmt.Fprintf(stdout, "imported %s\n", n)
	}
	if err != nil {
		return fmt.Errorf("image import %s: %w", pos[0], err)
	}
	if len(names) == 0 {
		return fmt.Errorf("image import %s: the archive holds no image", pos[0])
	}
	return nil
}

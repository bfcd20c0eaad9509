from fsq_ref.cli.commands import main

main()

from fsq_ref.cli import main

main()

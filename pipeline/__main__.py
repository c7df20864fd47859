from nhle_pipeline.pipeline.cli import main

main()
